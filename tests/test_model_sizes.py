"""Sizes from the source and variant choice by memory: `models pull` reads every file's size
from the hub's listing before it downloads anything, checks disk and memory (cgroup-aware)
with those figures, and names the compact Phi-4-mini build where the prebuilt one cannot load.
The test hub lists stand-in files at the public variant's sizes; recorded board trees (and a
copy with its cgroup's memory.max rewritten) stand in for the gateways."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fleet.update import parse_update
from agent.models.catalog import load_catalog
from tests.conftest import REPO, TINY
from tests.hub_support import Hub
from tests.test_models import FOLDER, PHI4, cli, hub_env

BOARDS = Path(__file__).parent / "fixtures" / "boards"
GIB = 1024**3
# microsoft/Phi-4-mini-instruct-onnx, cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4, as
# the hub lists it: the fp32 embedding makes model.onnx.data 4.86 GB.
PUBLIC_SIZES = {"model.onnx.data": 4_860_000_000, "model.onnx": 52_000_000,
                "tokenizer.json": 15_500_000}  # fmt: skip


def served(tmp_path: Path, sizes: dict[str, int]) -> Hub:
    """The Phi-4-mini ONNX repository's CPU folder: the tiny model's files, listed at `sizes`."""
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "cpu-int4", repo / FOLDER)
    listed = {f"{FOLDER}/{name}": size for name, size in sizes.items()}
    return Hub(PHI4.variant("cpu-int4").repo, repo, listed=listed)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    hub = served(tmp_path, PUBLIC_SIZES)
    yield hub
    hub.close()


def board_with_memory_max(tmp_path: Path, limit: int) -> Path:
    """The recorded x86 container (a 256 GB host) with its cgroup's memory.max set to `limit`."""
    root = tmp_path / "board"
    shutil.copytree(BOARDS / "x86-container", root)
    (root / "sys" / "fs" / "cgroup" / "memory.max").write_text(f"{limit}\n")
    (root / "sys" / "fs" / "cgroup" / "memory.current").write_text("0\n")
    return root


def pull(hub: Hub, tmp_path: Path, board: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**hub_env(hub, tmp_path), "EDGE_AGENT_HARDWARE_ROOT": str(board)}
    return cli("models", "pull", "phi-4-mini-instruct", *extra,
               "--state-dir", str(tmp_path / "state"), env=env)  # fmt: skip


def partial_files(tmp_path: Path) -> list[Path]:
    partial = tmp_path / "state" / "models" / ".partial"
    return [p for p in partial.rglob("*") if p.is_file()] if partial.exists() else []


def test_pull_refuses_the_prebuilt_variant_where_it_cannot_load(hub, tmp_path) -> None:
    """A 6 GiB cgroup on a 256 GB host: the prebuilt variant (4.93 GB listed, x 1.31 at load
    + 1 GiB KV = 7180 MiB) is refused before any download, with the figures, and the compact
    variant (~4985 MiB) is named as fitting, with how to build and push it."""
    refused = pull(hub, tmp_path, board_with_memory_max(tmp_path, 6 * GIB))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    listed_mib = sum(PUBLIC_SIZES.values()) // 2**20
    assert f"cpu-int4 needs about 7180 MiB (1.31 x {listed_mib} MiB of files" in message, message
    assert "hub listing" in message and "1024 MiB KV cache for 4096 tokens" in message, message
    assert "6144 MiB usable here (the cgroup's memory.max" in message, message
    assert "cpu-int4-compact needs about 4985 MiB (estimate) and fits" in message, message
    assert "edge-agent models convert microsoft/Phi-4-mini-instruct" in message, message
    assert "cmd/update_model" in message, message
    assert hub.downloads == [] and partial_files(tmp_path) == []  # nothing was fetched


def test_a_4gib_gateway_is_told_that_neither_variant_fits(hub, tmp_path) -> None:
    """4 GiB: the compact build's own peak at load (3.8 GiB) + KV does not fit either; the
    refusal gives its figure and names the catalog models that do fit."""
    refused = pull(hub, tmp_path, board_with_memory_max(tmp_path, 4 * GIB))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    assert "cpu-int4 needs about 7180 MiB" in message and "4096 MiB usable" in message, message
    assert "cpu-int4-compact needs about 4985 MiB (estimate): it does not fit either" in message
    assert "No variant of phi-4-mini-instruct fits" in message, message
    assert "qwen2.5-0.5b-instruct cpu-int4" in message, message
    assert hub.downloads == [] and partial_files(tmp_path) == []


@pytest.mark.parametrize("board", ["rpi5", "cgroup-8g", "core-ultra-npu"])
def test_the_prebuilt_variant_is_pulled_where_memory_suffices(hub, tmp_path, board) -> None:
    """An 8 GB Raspberry Pi 5 (8052 MiB) and an 8 GiB cgroup hold the prebuilt variant's
    7180 MiB (measured at full depth, scripts/bench/RESULTS.md), as does a 32 GB board."""
    root = board_with_memory_max(tmp_path, 8 * GIB) if board == "cgroup-8g" else BOARDS / board
    pulled = pull(hub, tmp_path, root)
    assert pulled.returncode == 0, pulled.stderr
    assert f"{FOLDER}/model.onnx.data" in hub.downloads
    assert (tmp_path / "state" / "models" / "phi-4-mini-instruct" / hub.commit[:12]).is_dir()


def test_measured_ratios_and_the_catalog_estimates_agree() -> None:
    """A variant with a measured load ratio: its ram_mib_estimate is that ratio x its files +
    the KV cache, so that `models list` before a pull and the check after it agree."""
    checked = 0
    for entry in load_catalog().values():
        for variant in entry.variants:
            if variant.load_peak_ratio is None:
                continue
            kv_mib = entry.kv_bytes_per_token * entry.default_context / 2**20
            expected = variant.load_peak_ratio * variant.size_mib_estimate + kv_mib
            assert abs(variant.ram_mib_estimate - expected) <= 1, (entry.name, variant.name)
            checked += 1
    phi = load_catalog()["phi-4-mini-instruct"]
    assert phi.variant("cpu-int4").load_peak_ratio == 1.31
    assert phi.variant("cpu-int4-compact").load_peak_ratio == 1.72
    assert checked >= 2


def test_the_disk_check_uses_the_listed_sizes(tmp_path) -> None:
    """A listing larger than any free disk is refused before the download; the catalog's
    estimate would have let it start."""
    hub = served(tmp_path, {"model.onnx.data": 1 << 50})
    try:
        refused = pull(hub, tmp_path, BOARDS / "core-ultra-npu")
    finally:
        hub.close()
    assert refused.returncode == 1
    assert "not enough disk space" in refused.stderr and "1073741824 MiB" in refused.stderr
    assert hub.downloads == []


def test_models_list_shows_listed_sizes_once_read_and_estimates_before(hub, tmp_path) -> None:
    state = str(tmp_path / "state")
    before = cli("models", "list", "--state-dir", state).stdout
    assert re.search(r"cpu-int4 +download ~4700 MiB \(estimate\) +memory ~7181 MiB", before)
    assert re.search(r"cpu-int4-compact +build ~2303 MiB \(estimate\) +memory ~4985", before)
    pull(hub, tmp_path, board_with_memory_max(tmp_path, 6 * GIB))  # refused, listing read
    after = cli("models", "list", "--state-dir", state).stdout
    listed_mib = sum(PUBLIC_SIZES.values()) // 2**20
    assert re.search(rf"cpu-int4 +download {listed_mib} MiB \(hub listing\)", after), after


def test_the_compact_variant_says_how_to_build_it(hub, tmp_path) -> None:
    """The printed fleet command is one cmd/update_model accepts: it carries the
    `manifest_url` of the files.json that convert writes (`source.url` alone is refused)."""
    refused = pull(hub, tmp_path, BOARDS / "rpi5", "--variant", "cpu-int4-compact")
    assert refused.returncode == 1
    message = refused.stderr
    assert "built by `edge-agent models convert microsoft/Phi-4-mini-instruct" in message
    assert "cmd/update_model" in message and "--trust-unverified" not in message, message
    found = re.search(r"'(\{\"name\".*?\})'", message)
    assert found, message
    update = parse_update(json.loads(found[1]), 0)
    assert update.manifest_url == "http://SERVER/DIR/files.json", message
    assert update.source == {"url": "http://SERVER/DIR"}
    assert "--from DIR/cpu-int4-compact`" in message
    assert hub.downloads == []


def detect(board: Path, state: Path, *extra: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "agent", "detect", "--root", str(board), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "EDGE_AGENT_STATE_DIR": str(state)},
    ).stdout  # fmt: skip


def test_detect_shows_which_catalog_models_fit(tmp_path) -> None:
    """Per catalog model, its variants for the provider it would use here: the catalog's
    estimates (no pull has read a listing in this state dir) against the board's memory."""
    state = tmp_path / "state"
    table = detect(BOARDS / "rpi5", state)
    assert re.search(r"phi-4-mini-instruct +cpu-int4 +~7181 MiB +fits", table), table
    assert re.search(r"phi-4-mini-instruct +cpu-int4-compact +~4985 MiB +fits", table), table
    assert re.search(r"smollm2-135m-instruct +cpu-int4 +~400 MiB +fits", table), table
    assert "of 8052 MiB usable" in table
    roomy = json.loads(detect(BOARDS / "core-ultra-npu", state, "--json"))["catalog"]
    phi = {row["variant"]: row for row in roomy if row["model"] == "phi-4-mini-instruct"}
    assert phi["cpu-int4"]["fits_memory"] and phi["cpu-int4"]["ram_mib"] == 7181
    fits = {}
    for gib in (6, 4):
        board = board_with_memory_max(tmp_path / str(gib), gib * GIB)
        rows = json.loads(detect(board, state, "--json"))["catalog"]
        phi = {row["variant"]: row for row in rows if row["model"] == "phi-4-mini-instruct"}
        fits[gib] = (phi["cpu-int4"]["fits_memory"], phi["cpu-int4-compact"]["fits_memory"])
    assert fits == {6: (False, True), 4: (False, False)}
