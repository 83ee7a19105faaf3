"""``python -m taskpool.ops.cli`` (and the old ``python -m taskpool.cli``): the command line."""

from taskpool.ops.cli import main

if __name__ == "__main__":
    main(prog_name="taskpool")
