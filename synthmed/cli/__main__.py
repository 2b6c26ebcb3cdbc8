"""``python -m synthmed.cli ...`` (as ``torchrun ... -m synthmed.cli train ...`` runs it)."""

from synthmed.cli import main

if __name__ == "__main__":
    main()
