"""The `clipdex` command's entry point (and `python -m search`), kept free of heavy imports.

Decode workers are spawned processes, and spawning runs the main script again in each: with the console
script importing `search.cli` directly, every worker imported the whole CLI (SQLAlchemy, pydantic, typer;
1 s and ~100 MB each) before decoding its first image. Through this module a worker imports nothing more.
"""

import logging
import os
import sys


def run_cli() -> None:
    """Run the command, then end the process without the interpreter's teardown.

    Tearing down the loaded modules (ONNX Runtime, FAISS, SQLAlchemy, pydantic) took 0.5 s after every
    command here, a third of a cold search. By then every command has committed and closed what it wrote.
    """
    from search.cli import app, err

    code = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):
            err.print(e.code, highlight=False)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_cli()
