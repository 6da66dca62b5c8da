"""`python -m baselines list | requirements [--all]`: the registered methods with their declared capabilities, or the
pip requirements of registered methods that are not installed here (scripts/setup_env.sh installs them)."""
from __future__ import annotations

from baselines.registry import describe_methods, missing_requirements


def main(argv: list[str] | None = None) -> int:
    """`python -m baselines requirements [--all]`: the missing requirements, one per line (setup_env.sh
    pipes them to pip); `python -m baselines list`: name, capabilities and description of each method."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m baselines")
    parser.add_argument("command", choices=("requirements", "list"))
    parser.add_argument("--all", action="store_true", help="requirements: also of methods not installed by default")
    args = parser.parse_args(argv)
    if args.command == "requirements":
        for line in missing_requirements(include_optional=args.all):
            print(line)
        return 0
    for line in describe_methods():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
