"""The frozen app's entry point (PyInstaller runs this instead of main.py).

It does three things `python main.py` does not need to:
- `omnivox -m engine.server …` runs the engine process, because app/engine_client.py starts the
  engine as `<sys.executable> -m engine.server` and a frozen app's sys.executable is this binary;
- puts the downloaded CUDA runtime (torch + bitsandbytes) ahead of the bundled CPU build in every
  process that may import torch;
- `omnivox --gpu-runtime install|status|remove` manages that runtime; opening the window checks
  for an NVIDIA GPU first and offers the download.
"""

from __future__ import annotations

import multiprocessing
import os
import sys


def main() -> int:
    argv = sys.argv[1:]
    from installers import firstrun

    if argv[:1] == ["--gpu-runtime"]:
        return firstrun.command(argv[1:])
    if argv[:2] == ["-m", "engine.server"]:
        firstrun.activate_for_engine()
        from engine.server import main as serve

        status = serve(argv[2:])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # as `python -m engine.server` does: skip torch's slow interpreter teardown
    if firstrun.opens_window(argv):
        firstrun.first_run_for_window()
    else:
        firstrun.activate_for_engine()  # headless commands (`ask`, `--self-test`) run the engine in-process
    import main as entry

    return entry.main(argv)


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen child started by multiprocessing must not re-run main()
    sys.exit(main())
