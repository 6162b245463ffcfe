"""``python -m vlmir <command>``: the command line (see ``python -m vlmir --help``)."""

from vlmir.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
