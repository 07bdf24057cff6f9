"""Example configurations installed with tierfs (`tierfs config example [NAME]`).

Each NAME.toml is a complete, commented config for one common deployment;
its first line, a comment, is the one-line description the listing shows.
tests/system/test_cli_config.py checks every one with `tierfs config check`.
"""
