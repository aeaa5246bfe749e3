from core.cli import main  # `python -m core ...`: the headless CLI, core/cli/ (usage in its __init__.py)
if __name__ == "__main__":
    raise SystemExit(main())
