"""`edge-agent models`: the catalog, pull, verify, activate, remove, convert and import."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.models.catalog import CatalogEntry
from agent.models.store import ModelStore
from agent.settings import Settings, SettingsError, load_settings

EXIT_CONFIG = 2


def models_command(args: argparse.Namespace) -> int:
    from agent.models import catalog
    from agent.models.convert import ConvertError, ConvertPlan, convert
    from agent.models.pull import PullError, pull
    from agent.models.store import ModelStore, StoreError

    if args.models_command == "convert":
        plan = ConvertPlan(args.source, args.out, args.precision, args.provider,
                           args.prune_lm_head, args.python, block_size=args.block_size,
                           compact=args.compact)  # fmt: skip
        try:
            print(f"converted into {convert(plan, args.name)}")
        except ConvertError as exc:
            print(f"edge-agent: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        settings = load_settings(args.config, state_dir=args.state_dir, models_dir=args.models_dir)
    except SettingsError as exc:
        for line in exc.lines:
            print(f"edge-agent: {line}", file=sys.stderr)
        return EXIT_CONFIG
    store = ModelStore(settings.models_root)
    try:
        if args.models_command == "list":
            _print_models(catalog.load_catalog(), store)
        elif args.models_command == "pull":
            entry = catalog.find(args.name)
            variant = entry.variant(args.variant, _best_provider(settings, entry))
            token = args.token_file.read_text().strip() if args.token_file else None
            pulled = pull(entry, variant, store, source=args.source, token=token,
                          trust_unverified=args.trust_unverified,
                          hardware_root=settings.governor.hardware_root)  # fmt: skip
            if pulled.unverified:
                print(f"edge-agent: WARNING: {len(pulled.unverified)} files NOT verified "
                      f"(--trust-unverified, recorded in the manifest): "
                      f"{', '.join(pulled.unverified)}", file=sys.stderr)  # fmt: skip
            checked = "some NOT verified" if pulled.unverified else "verified"
            print(f"pulled {entry.name} {variant.name} ({pulled.files} files, "
                  f"{pulled.bytes / 2**20:.1f} MiB, {checked}) into {pulled.path}")  # fmt: skip
            if args.activate:
                store.activate(entry.name, pulled.version)
                print(f"activated {entry.name} {pulled.version}")
        elif args.models_command == "import":
            return _import(args, store)
        elif args.models_command == "verify":
            problems = store.verify(args.name, args.version)
            for problem in problems:
                print(f"edge-agent: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"{args.name}: every file matches its recorded sha256")
        elif args.models_command == "activate":
            model = store.activate(args.name, args.version)
            print(f"activated {model.name} {model.version}: {store.pointer} -> {model.path}")
        else:
            for path in store.remove(args.name):
                print(f"removed {path}")
    except (catalog.CatalogError, PullError, StoreError, OSError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _import(args: argparse.Namespace, store: Any) -> int:
    from agent.models.gguf_header import GGUFError
    from agent.models.gguf_import import ImportFailed, ImportPlan, import_gguf
    from agent.models.ollama_store import OllamaStoreError

    plan = ImportPlan(args.source, args.name, tuple(args.precision or ["int4"]), args.provider,
                      args.block_size, args.python, args.keep_hf)  # fmt: skip
    try:
        done = import_gguf(plan, store, args.out)
    except (ImportFailed, GGUFError, OllamaStoreError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    print(f"imported {done.name} {done.version} ({', '.join(done.variants)}) into {done.path}")
    if args.activate and args.out is None:
        store.activate(done.name, done.version)
        print(f"activated {done.name} {done.version}")
    return 0


def _best_provider(settings: Settings, entry: CatalogEntry) -> str | None:
    """The provider the daemon would pick here, so pull fetches the variant it will load."""
    if settings.engine.provider != "auto":
        return settings.engine.provider
    from agent.hardware.inventory import detect
    from agent.hardware.providers import Installed, rank

    offered = {v.provider for v in entry.variants}
    ranked = rank(detect(settings.governor.hardware_root), Installed.probe(), offered)
    return next((c.variant_provider for c in ranked if c.accepted), None)


def _print_models(entries: dict[str, CatalogEntry], store: ModelStore) -> None:
    from agent.models.fit import variant_line

    installed = {m.name: m for m in store.installed()}
    print(f"{'name':<26}{'variants':<28}{'installed':<16}description")
    for name, entry in entries.items():
        model = installed.pop(name, None)
        state = "-" if model is None else model.version + (" (active)" if model.active else "")
        variants = ",".join(v.name for v in entry.variants)
        print(f"{name:<26}{variants:<27} {state:<16}{entry.description}")
        for variant in entry.variants:
            print(variant_line(store.root, entry, variant))
    for name, model in installed.items():  # installed, not (or no longer) in the catalog
        state = model.version + (" (active)" if model.active else "")
        print(f"{name:<26}{'-':<28}{state:<16}{model.manifest.get('description', '')}")
