"""Model manager: what is installed, downloading (progress, resume, cancel), verifying, removing.

huggingface_hub finds a Lyra repository's files and their URLs. The bytes are fetched here, with
HTTP Range requests into `<file>.part` beside the target: huggingface_hub 2.x downloads every
attempt into a fresh process-unique temporary file, so a 5 GB shard cut off by a closed laptop
would start over — here it continues where it stopped. The unit vocoder (not on the hub) comes
the same way. `models.json` in the data folder records each finished model; a model is listed as
installed only once every file arrived whole. Progress is reported for the whole model, not only
file by file, so one bar can show it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.catalog import CATALOG, CatalogModel
from engine.errors import OmnivoxError

VOCODER_URL = ("https://dl.fbaipublicfiles.com/fairseq/speech_to_speech/vocoder/code_hifigan/"
               "mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj")
VOCODER_FILES = ("g_00500000", "config.json")
CHUNK = 1 << 20
ProgressCallback = Callable[[str, int, int | None], None]  # file, bytes done, bytes total


class DownloadCancelled(OmnivoxError):
    pass


@dataclass(frozen=True)
class Progress:
    file: str
    file_done: int
    file_total: int | None
    done: int  # bytes of the whole model on disk, earlier runs' included
    total: int  # bytes of the whole model as far as known: the vocoder's size is learnt when it starts


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
    """Translate network and disk failures into one actionable line."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return OmnivoxError(f"{what}: the disk is full; free some space and run the download again (it resumes).")
    return OmnivoxError(f"{what}: download failed ({type(err).__name__}: {err}); check the network and retry "
                        "(it resumes where it stopped).")


class ModelStore:
    def __init__(self, data_dir: Path, endpoint: str | None = None, vocoder_url: str = VOCODER_URL) -> None:
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.vocoder_url = vocoder_url.rstrip("/")
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
        sha, files = self.repo_files(entry)
        sizes = {f"{entry.repo}/{filename}": size for filename, size in files.items()}
        report = Tally(progress or (lambda _: None), sizes)
        folder = self.download_repo(entry, sha, files, report, cancel)
        vocoder = self.download_vocoder(folder / "vocoder", report, cancel)  # where the loader looks by default
        registry = self.registry()
        registry[name] = {"repo": entry.repo, "folder": str(folder), "vocoder": str(vocoder), "files": files}
        self.save_registry(registry)
        return ModelPaths(folder, vocoder)

    def repo_files(self, entry: CatalogModel) -> tuple[str | None, dict[str, int]]:
        """The repository's commit and its files' sizes, from the hub."""
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=self.endpoint).model_info(entry.repo, files_metadata=True)
        except Exception as err:  # transport and hub errors alike mean "could not ask the hub"
            raise download_failure(entry.repo, err) from err
        files = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
        if not files:
            raise OmnivoxError(f"{entry.repo}: the hub lists no files for this model.")
        return info.sha, files

    def download_repo(self, entry: CatalogModel, sha: str | None, files: dict[str, int], report: ProgressCallback,
                      cancel: threading.Event) -> Path:
        from huggingface_hub import hf_hub_url

        folder = self.model_folder(entry.name)
        for filename, size in files.items():
            target, label = folder / filename, f"{entry.repo}/{filename}"
            if target.is_file() and target.stat().st_size == size:
                report(label, size, size)  # finished in an earlier run
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            url = hf_hub_url(entry.repo, filename, revision=sha, endpoint=self.endpoint)
            self.fetch_resumable(url, target, label, report, cancel)
        return folder

    def download_vocoder(self, folder: Path, report: ProgressCallback, cancel: threading.Event) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for filename in VOCODER_FILES:
            target, label = folder / filename, f"vocoder/{filename}"
            if target.exists():
                report(label, target.stat().st_size, target.stat().st_size)
            else:
                self.fetch_resumable(f"{self.vocoder_url}/{filename}", target, label, report, cancel)
        return folder

    def model_folder(self, name: str) -> Path:
        return self.data_dir / "models" / name

    def partial_bytes(self, name: str) -> int:
        """Bytes an unfinished download of `name` left on disk (0 when none, or when it is installed)."""
        folder = self.model_folder(name)
        if self.installed(name) is not None or not folder.is_dir():
            return 0
        return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

    def fetch_resumable(self, url: str, target: Path, label: str, report: ProgressCallback,
                        cancel: threading.Event) -> None:
        """GET `url` into `target` through `target.part`, continuing a previous partial file."""
        partial = target.with_name(target.name + ".part")
        done = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if done and response.status != 206:
                    done = 0  # the server ignored the Range: start over
                length = response.headers.get("Content-Length")
                total = done + int(length) if length else None
                with open(partial, "ab" if done else "wb") as out:
                    while chunk := response.read(CHUNK):
                        if cancel.is_set():
                            raise DownloadCancelled(f"{label}: download cancelled; run it again to resume.")
                        out.write(chunk)
                        done += len(chunk)
                        report(label, done, total)
            if total is not None and done < total:
                raise ConnectionError(f"the server closed the connection after {done} of {total} bytes")
        except urllib.error.HTTPError as err:
            if err.code != 416:  # 416: the partial file is already whole
                raise download_failure(label, err) from err
        except OSError as err:
            raise download_failure(label, err) from err
        os.replace(partial, target)

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
        for filename in VOCODER_FILES:
            if not (Path(record["vocoder"]) / filename).is_file():
                problems.append(f"missing vocoder/{filename}")
        if not problems:
            from engine.checkpoint import locate, read_index

            try:
                read_index(locate(folder, Path(record["vocoder"])))
            except OmnivoxError as err:
                problems.append(str(err))
        return problems

    def remove(self, name: str) -> None:
        """Delete an installed model, or what an unfinished download of it left."""
        catalog_entry(name)
        registry = self.registry()
        record = registry.pop(name, None)
        if record is None:
            if not self.partial_bytes(name):
                raise OmnivoxError(f"{name} is not installed.")
            shutil.rmtree(self.model_folder(name), ignore_errors=True)
            return
        self.save_registry(registry)  # forget first: a half-deleted folder is never listed as installed
        shutil.rmtree(record["folder"], ignore_errors=True)


HEADROOM_BYTES = 1_500_000_000  # activations, KV cache of a long turn, CUDA context


def model_listing(store: ModelStore) -> list[dict]:
    """The catalogue with install state (the folder when installed, else the bytes an unfinished download left),
    NF4 weight size and whether it fits the GPU's free memory."""
    import torch

    from engine.memory import build_on_meta, weight_bytes_by_part

    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    rows = []
    for name, entry in CATALOG.items():
        nf4 = sum(weight_bytes_by_part(build_on_meta(entry.config(), entry.size), "nf4").values())
        installed = store.installed(name)
        rows.append({
            "name": name, "repo": entry.repo, "parameters": entry.parameters,
            "download_gb": round(entry.download_bytes / 1e9, 1), "nf4_gb": round(nf4 / 1e9, 2),
            "installed": installed is not None, "folder": str(installed.folder) if installed else None,
            "partial_bytes": store.partial_bytes(name),
            "fits_gpu": None if free is None else nf4 + HEADROOM_BYTES <= free,
        })
    return rows
