"""``python -m taskpool``: the command line (``taskpool ...``)."""

from taskpool.ops.cli import main

if __name__ == "__main__":
    main(prog_name="taskpool")
