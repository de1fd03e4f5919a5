"""Every pulled file verified: LFS files by sha256, files the hub keeps in git by their git
blob id, `--from` folders by a hash list (or `--trust-unverified`, said and recorded), and
an interrupted download resumed with an HTTP Range, all against the local test hub."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

from tests.conftest import TINY
from tests.hub_support import Hub
from tests.test_models import FOLDER, PHI4, cli, hub_env

PLAIN = frozenset({"genai_config.json", "tokenizer_config.json", "chat_template.jinja"})


def pull_from(hub: Hub, tmp_path: Path) -> tuple[int, str, Path]:
    pulled = cli("models", "pull", "phi-4-mini-instruct", "--variant", "cpu-int4",
                 "--state-dir", str(tmp_path / "state"), env=hub_env(hub, tmp_path))  # fmt: skip
    return pulled.returncode, pulled.stderr, tmp_path / "state" / "models" / PHI4.name


def served(tmp_path: Path, **options: object) -> Hub:
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "cpu-int4", repo / FOLDER)
    return Hub(PHI4.variant("cpu-int4").repo, repo, **options)  # type: ignore[arg-type]


def recorded(folder: Path) -> dict[str, dict]:
    (manifest,) = folder.glob("*/manifest.toml")
    return {f["path"]: f for f in tomllib.loads(manifest.read_text())["files"]}


def test_files_kept_in_git_are_checked_against_their_blob_id(tmp_path) -> None:
    hub = served(tmp_path, plain=PLAIN)
    try:
        code, stderr, folder = pull_from(hub, tmp_path)
    finally:
        hub.close()
    assert code == 0, stderr
    files = recorded(folder)
    for file in hub.files():
        assert files[file["path"]]["sha256"] == file["sha256"]
        assert files[file["path"]]["verified"] == ("lfs-sha256" if file["lfs"] else "git-blob")


def test_a_tampered_file_kept_in_git_is_refused_and_nothing_installed(tmp_path) -> None:
    hub = served(tmp_path, plain=PLAIN, corrupt="tokenizer_config.json")
    try:
        code, stderr, folder = pull_from(hub, tmp_path)
    finally:
        hub.close()
    assert code == 1
    assert "tokenizer_config.json: git blob id" in stderr and "not the expected" in stderr
    assert not folder.exists()


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path) -> None:
    # huggingface-hub writes what it received in 10 MiB chunks: a file past two of them.
    hub = served(tmp_path, cut="weights.bin")
    weights = hub.root / FOLDER / "weights.bin"
    weights.write_bytes(hashlib.sha256(b"seed").digest() * (24 << 15))  # 24 MiB
    size = weights.stat().st_size
    try:
        code, stderr, folder = pull_from(hub, tmp_path)
    finally:
        hub.close()
    assert code == 0, stderr
    (asked,) = hub.ranges  # the retry asked only for what was missing
    assert asked.startswith("bytes=") and 0 < int(asked[6:].rstrip("-")) < size
    installed = next(folder.glob(f"*/{FOLDER}/weights.bin"))
    assert installed.read_bytes() == weights.read_bytes()
    assert recorded(folder)[f"{FOLDER}/weights.bin"]["verified"] == "lfs-sha256"


def usb(tmp_path: Path) -> Path:
    source = tmp_path / "usb"
    shutil.copytree(TINY / "cpu-fp32", source)
    return source


def pull_folder(source: Path, tmp_path: Path, *flags: str) -> tuple[int, str, str, Path]:
    pulled = cli("models", "pull", "qwen2.5-0.5b-instruct", "--from", str(source),
                 "--state-dir", str(tmp_path / "state"), *flags)  # fmt: skip
    folder = tmp_path / "state" / "models" / "qwen2.5-0.5b-instruct"
    return pulled.returncode, pulled.stdout, pulled.stderr, folder


def sha256sums(source: Path) -> str:
    return "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(source).as_posix()}\n"
        for p in sorted(source.rglob("*"))
        if p.is_file() and p.name != "sha256sums"
    )


def test_a_folder_without_hashes_is_refused_unless_trusted_which_is_recorded(tmp_path) -> None:
    source = usb(tmp_path)
    code, _, stderr, folder = pull_folder(source, tmp_path)
    assert (
        code == 1 and "no sha256sums or manifest.toml" in stderr and "--trust-unverified" in stderr
    )
    assert not folder.exists()
    code, _, stderr, folder = pull_folder(source, tmp_path, "--trust-unverified")
    assert code == 0, stderr
    assert "NOT verified" in stderr and "genai_config.json" in stderr
    (manifest,) = folder.glob("*/manifest.toml")
    written = tomllib.loads(manifest.read_text())
    assert written["source"]["trust_unverified"] is True
    assert {f["verified"] for f in written["files"]} == {"unverified"}


def test_a_folder_is_checked_against_its_sha256sums(tmp_path) -> None:
    source = usb(tmp_path)
    (source / "sha256sums").write_text(sha256sums(source))
    code, _, stderr, folder = pull_folder(source, tmp_path)
    assert code == 0, stderr
    files = recorded(folder)
    assert {f["verified"] for f in files.values()} == {"source-sha256"}
    assert "cpu-fp32/sha256sums" not in files  # the list itself is not part of the model


def test_a_tampered_or_unlisted_file_in_a_folder_is_refused(tmp_path) -> None:
    source = usb(tmp_path)
    (source / "sha256sums").write_text(sha256sums(source))
    data = source / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    code, _, stderr, folder = pull_folder(source, tmp_path)
    assert code == 1 and "model.onnx.data: sha256" in stderr and "not the expected" in stderr
    assert not folder.exists()
    (source / "sha256sums").write_text(sha256sums(source))
    (source / "extra.onnx").write_bytes(b"slipped in")
    code, _, stderr, folder = pull_folder(source, tmp_path)
    assert code == 1 and "extra.onnx: not in" in stderr
    assert not folder.exists()
