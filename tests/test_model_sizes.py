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


@pytest.mark.parametrize("board", ["rpi5", "cgroup-8g"])
def test_pull_refuses_the_prebuilt_variant_where_it_cannot_load(hub, tmp_path, board) -> None:
    """An 8 GB Raspberry Pi 5, and an 8 GiB cgroup on a 256 GB host: the prebuilt variant
    (4.93 GB listed, ~12.5 GB at load) is refused before any download, with the figures, and
    the compact variant is named with how to build and push it."""
    root = BOARDS / "rpi5" if board == "rpi5" else board_with_memory_max(tmp_path, 8 * GIB)
    refused = pull(hub, tmp_path, root)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    listed_mib = sum(PUBLIC_SIZES.values()) // 2**20
    assert re.search(r"cpu-int4 needs about 12\d\d\d MiB", message), message
    assert "hub listing" in message and f"{listed_mib} MiB" in message, message
    usable = "8052 MiB" if board == "rpi5" else "8192 MiB"
    assert f"{usable} usable" in message, message
    assert "cpu-int4-compact" in message and "fits" in message, message
    assert "edge-agent models convert microsoft/Phi-4-mini-instruct" in message, message
    assert "cmd/update_model" in message, message
    assert hub.downloads == [] and partial_files(tmp_path) == []  # nothing was fetched


def test_the_same_pull_is_allowed_where_memory_suffices(hub, tmp_path) -> None:
    """The control: the same listing on a 32 GB board passes both checks and installs."""
    pulled = pull(hub, tmp_path, BOARDS / "core-ultra-npu")
    assert pulled.returncode == 0, pulled.stderr
    assert f"{FOLDER}/model.onnx.data" in hub.downloads
    assert (tmp_path / "state" / "models" / "phi-4-mini-instruct" / hub.commit[:12]).is_dir()


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
    assert re.search(r"cpu-int4 +download ~4700 MiB \(estimate\) +memory ~12774 MiB", before)
    assert re.search(r"cpu-int4-compact +build ~2303 MiB \(estimate\)", before), before
    pull(hub, tmp_path, BOARDS / "rpi5")  # refused, but the listing was read
    after = cli("models", "list", "--state-dir", state).stdout
    listed_mib = sum(PUBLIC_SIZES.values()) // 2**20
    assert re.search(rf"cpu-int4 +download {listed_mib} MiB \(hub listing\)", after), after


def test_the_compact_variant_says_how_to_build_it(hub, tmp_path) -> None:
    refused = pull(hub, tmp_path, BOARDS / "rpi5", "--variant", "cpu-int4-compact")
    assert refused.returncode == 1
    assert "built by `edge-agent models convert microsoft/Phi-4-mini-instruct" in refused.stderr
    assert "cmd/update_model" in refused.stderr and '"url"' in refused.stderr
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
    assert re.search(r"phi-4-mini-instruct +cpu-int4 +~12774 MiB +does not fit", table), table
    assert re.search(r"phi-4-mini-instruct +cpu-int4-compact +~6782 MiB +fits", table), table
    assert re.search(r"smollm2-135m-instruct +cpu-int4 +~400 MiB +fits", table), table
    assert "of 8052 MiB usable" in table
    roomy = json.loads(detect(BOARDS / "core-ultra-npu", state, "--json"))["catalog"]
    phi = {row["variant"]: row for row in roomy if row["model"] == "phi-4-mini-instruct"}
    assert phi["cpu-int4"]["fits_memory"] and phi["cpu-int4"]["ram_mib"] == 12774
    small = json.loads(detect(board_with_memory_max(tmp_path, 4 * GIB), state, "--json"))
    phi = {row["variant"]: row for row in small["catalog"] if row["model"] == "phi-4-mini-instruct"}
    assert not phi["cpu-int4"]["fits_memory"] and not phi["cpu-int4-compact"]["fits_memory"]
