"""Model manager: what is installed, downloading (progress, resume, cancel), verifying, removing.

huggingface_hub lists a Lyra repository's files with their sizes and checksums (SHA-256 for LFS
files, the git blob id for small ones) and gives their URLs. The bytes are fetched by
`engine.fetch`, with HTTP Range requests into `<file>.part` beside the target: huggingface_hub 2.x
downloads every attempt into a fresh process-unique temporary file, so a 5 GB shard cut off by a
closed laptop would start over — here it continues where it stopped. Every file is checked
against its size and checksum before it is renamed into place, and every name in the listing must
stay inside the model folder. The unit vocoder (not on the hub) comes the same way, checked
against the sizes and SHA-256 digests of the catalogue (`engine.catalog.VOCODER`); a file whose
size or checksum is not known is never installed. `models.json` in the data folder records each
finished model; a model is listed as installed only once every file arrived whole. Progress is
reported for the whole model, not only file by file, so one bar can show it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.catalog import CATALOG, VOCODER, CatalogModel, RemoteFile, VocoderSource
from engine.errors import OmnivoxError
from engine.fetch import CHUNK, DownloadCancelled, DownloadError, Expected, fetch, inside, is_verified

__all__ = ["CHUNK", "DownloadCancelled", "DownloadError", "ModelPaths", "ModelStore", "Progress", "model_listing"]

ProgressCallback = Callable[[str, int, int | None], None]  # file, bytes done, bytes total


@dataclass(frozen=True)
class Progress:
    file: str
    file_done: int
    file_total: int | None
    done: int  # bytes of the whole model on disk, earlier runs' included
    total: int  # bytes of the whole model, the vocoder's included


class Tally:
    """File-by-file progress (a ProgressCallback) summed into the whole download's."""

    def __init__(self, report: Callable[[Progress], None], sizes: dict[str, int]) -> None:
        self.report = report
        self.sizes = dict(sizes)  # file → bytes, of every file known so far
        self.done: dict[str, int] = {}

    def __call__(self, file: str, done: int, total: int | None) -> None:
        if total is not None:
            self.sizes[file] = total
        self.done[file] = done
        self.report(Progress(file, done, total, sum(self.done.values()), sum(self.sizes.values())))


@dataclass(frozen=True)
class ModelPaths:
    folder: Path
    vocoder: Path


def catalog_entry(name: str) -> CatalogModel:
    if name not in CATALOG:
        raise OmnivoxError(f"unknown model {name!r}; choose one of {', '.join(CATALOG)}.")
    return CATALOG[name]


def download_failure(what: str, err: BaseException) -> OmnivoxError:
    """The hub could not be asked: one actionable line."""
    return OmnivoxError(f"{what}: download failed ({type(err).__name__}: {err}); check the network and retry "
                        "(it resumes where it stopped).")


def read_vocoder_source(path: Path) -> VocoderSource:
    """A vocoder source from JSON: {"url": …, "files": {"g_00500000": {"size": …, "sha256": …}, …}}."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        files = tuple(RemoteFile(name, int(spec["size"]), str(spec["sha256"])) for name, spec in raw["files"].items())
        source = VocoderSource(str(raw["url"]), files)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise OmnivoxError(f"{path}: not a vocoder source ({type(err).__name__}: {err}); expected JSON with "
                           '"url" and "files": {name: {"size", "sha256"}}.') from None
    if {file.name for file in files} != {file.name for file in VOCODER.files}:
        raise OmnivoxError(f"{path}: a vocoder source must name the files "
                           f"{', '.join(file.name for file in VOCODER.files)}.")
    return source


def hub_expectation(label: str, sibling) -> Expected:  # noqa: ANN001 - huggingface_hub's RepoSibling
    """Size and checksum the hub lists for one file: SHA-256 for LFS files, the git blob id for the rest."""
    if sibling.lfs is not None:
        return Expected.known(label, sibling.lfs.size, sha256=sibling.lfs.sha256)
    return Expected.known(label, sibling.size, git_blob_sha1=sibling.blob_id)


class ModelStore:
    def __init__(self, data_dir: Path, endpoint: str | None = None, vocoder: VocoderSource = VOCODER) -> None:
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.vocoder = vocoder
        self.registry_path = data_dir / "models.json"

    # ---- registry -----------------------------------------------------------------------

    def registry(self) -> dict[str, dict]:
        try:
            return json.loads(self.registry_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OmnivoxError(f"{self.registry_path}: unreadable ({err}); delete it and verify your models.") from err

    def save_registry(self, registry: dict[str, dict]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.registry_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(registry, indent=2), encoding="utf-8")
        os.replace(temporary, self.registry_path)

    def installed(self, name: str) -> ModelPaths | None:
        record = self.registry().get(name)
        return ModelPaths(Path(record["folder"]), Path(record["vocoder"])) if record else None

    # ---- download -----------------------------------------------------------------------

    def download(self, name: str, progress: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None) -> ModelPaths:
        entry = catalog_entry(name)
        cancel = cancel or threading.Event()
        vocoder_files = self.vocoder_expectations()  # before any byte: an unverifiable vocoder fails at once
        sha, files = self.repo_files(entry)
        folder = self.model_folder(entry.name)
        targets = listing_targets(folder, files)
        sizes = {f"{entry.repo}/{filename}": expected.size for filename, expected in files.items()}
        sizes |= {f"vocoder/{filename}": expected.size for filename, expected in vocoder_files.items()}
        report = Tally(progress or (lambda _: None), sizes)
        self.download_repo(entry, sha, files, targets, report, cancel)
        vocoder = self.download_vocoder(folder / "vocoder", vocoder_files, report, cancel)  # where the loader looks
        registry = self.registry()
        registry[name] = {"repo": entry.repo, "folder": str(folder), "vocoder": str(vocoder),
                          "files": {filename: expected.size for filename, expected in files.items()}}
        self.save_registry(registry)
        return ModelPaths(folder, vocoder)

    def vocoder_expectations(self) -> dict[str, Expected]:
        try:
            return {file.name: Expected.known(f"vocoder/{file.name}", file.size, file.sha256)
                    for file in self.vocoder.files}
        except DownloadError as err:
            raise DownloadError(f"{err} Give its size and SHA-256 with `python main.py models --vocoder-source "
                                "FILE download …`.") from None

    def repo_files(self, entry: CatalogModel) -> tuple[str | None, dict[str, Expected]]:
        """The repository's commit and what each of its files must be, from the hub."""
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=self.endpoint).model_info(entry.repo, files_metadata=True)
        except Exception as err:  # transport and hub errors alike mean "could not ask the hub"
            raise download_failure(entry.repo, err) from err
        siblings = info.siblings or []
        if not siblings:
            raise OmnivoxError(f"{entry.repo}: the hub lists no files for this model.")
        return info.sha, {s.rfilename: hub_expectation(f"{entry.repo}/{s.rfilename}", s) for s in siblings}

    def download_repo(self, entry: CatalogModel, sha: str | None, files: dict[str, Expected],
                      targets: dict[str, Path], report: ProgressCallback, cancel: threading.Event) -> None:
        from huggingface_hub import hf_hub_url

        for filename, expected in files.items():
            url = hf_hub_url(entry.repo, filename, revision=sha, endpoint=self.endpoint)
            fetch_checked(url, targets[filename], expected, f"{entry.repo}/{filename}", report, cancel)

    def download_vocoder(self, folder: Path, files: dict[str, Expected], report: ProgressCallback,
                         cancel: threading.Event) -> Path:
        for filename, expected in files.items():
            url = f"{self.vocoder.url.rstrip('/')}/{filename}"
            fetch_checked(url, folder / filename, expected, f"vocoder/{filename}", report, cancel)
        return folder

    def model_folder(self, name: str) -> Path:
        return self.data_dir / "models" / name

    def partial_bytes(self, name: str) -> int:
        """Bytes an unfinished download of `name` left on disk (0 when none, or when it is installed)."""
        folder = self.model_folder(name)
        if self.installed(name) is not None or not folder.is_dir():
            return 0
        return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

    # ---- verify / remove ----------------------------------------------------------------

    def verify(self, name: str) -> list[str]:
        """Problems with an installed model (empty when it is complete)."""
        catalog_entry(name)
        record = self.registry().get(name)
        if record is None:
            raise OmnivoxError(f"{name} is not installed; run: python main.py models download {name}")
        folder, problems = Path(record["folder"]), []
        for filename, size in record["files"].items():
            path = folder / filename
            if not path.is_file():
                problems.append(f"missing {filename}")
            elif size and path.stat().st_size != size:
                problems.append(f"{filename} has {path.stat().st_size} bytes, expected {size}")
        for file in self.vocoder.files:
            if not (Path(record["vocoder"]) / file.name).is_file():
                problems.append(f"missing vocoder/{file.name}")
        if not problems:
            from engine.checkpoint import locate, read_index

            try:
                read_index(locate(folder, Path(record["vocoder"])))
            except OmnivoxError as err:
                problems.append(str(err))
        return problems

    def remove(self, name: str) -> None:
        """Delete an installed model with its cached quantized weights, or what an unfinished download left."""
        from engine import weight_cache  # imports torch: not at start-up

        catalog_entry(name)
        registry = self.registry()
        record = registry.pop(name, None)
        if record is None:
            if not self.partial_bytes(name):
                raise OmnivoxError(f"{name} is not installed.")
            shutil.rmtree(self.model_folder(name), ignore_errors=True)
            return
        self.save_registry(registry)  # forget first: a half-deleted folder is never listed as installed
        weight_cache.remove(weight_cache.cache_dir(self.data_dir), Path(record["folder"]))
        shutil.rmtree(record["folder"], ignore_errors=True)


def listing_targets(folder: Path, files: dict[str, Expected]) -> dict[str, Path]:
    """Where each listed file goes; DownloadError before any byte when a name leaves the folder."""
    targets = {filename: inside(folder, filename) for filename in files}
    reserved = [filename for filename in files if filename.split("/")[0] == "vocoder"]
    if reserved:
        raise DownloadError(f"the listing names {reserved[0]!r} in vocoder/, which holds the separately "
                            "verified vocoder; refusing the download.")
    return targets


def fetch_checked(url: str, target: Path, expected: Expected, label: str, report: ProgressCallback,
                  cancel: threading.Event) -> None:
    """Fetch one file unless a verified copy is in place (an earlier run's); a damaged one is fetched again."""
    if is_verified(target, expected):
        report(label, expected.size, expected.size)
        return
    fetch(url, target, expected, label, lambda done: report(label, done, expected.size), cancel)


# "Fits" means: a 4k-token conversation whose last turn asked about a screenshot in 30 s of speech,
# then transcribed that speech (engine/memory.py prices each part).
FIT_TOKENS, FIT_PROMPT_TOKENS = 4096, 1536


def model_listing(store: ModelStore) -> list[dict]:
    """The catalogue with install state (the folder when installed, else the bytes an unfinished download left),
    NF4 weight size and whether a turn of FIT_TOKENS fits the GPU's free memory."""
    import torch

    from engine.memory import build_on_meta, gpu_bytes_needed, weight_bytes_by_part

    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    rows = []
    for name, entry in CATALOG.items():
        model = build_on_meta(entry.config(), entry.size)
        nf4 = sum(weight_bytes_by_part(model, "nf4").values())
        needed = gpu_bytes_needed(model, entry.size, "nf4", FIT_TOKENS, FIT_PROMPT_TOKENS)
        installed = store.installed(name)
        rows.append({
            "name": name, "repo": entry.repo, "parameters": entry.parameters,
            "download_gb": round(entry.download_bytes / 1e9, 1), "nf4_gb": round(nf4 / 1e9, 2),
            "installed": installed is not None, "folder": str(installed.folder) if installed else None,
            "partial_bytes": store.partial_bytes(name),
            "fits_gpu": None if free is None else needed <= free,
        })
    return rows
