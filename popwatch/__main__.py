"""``python -m popwatch``: the same as the ``popwatch`` command."""

from popwatch.cli import main_entry

if __name__ == "__main__":
    main_entry()
