"""Tools for the people who edit the policy: validate, explain, check, test, diff, matrix, schema, and their CLI.

One module per tool (`validate`, `explain`, `check`, `testing`, `diff`, `matrix`) over what they share
(`common`, `requirement`, `routes`); `tools` gathers them in one namespace and `cli` is `gateway policy`.
The tools sit above the policy, config, auth and guard packages and below the proxy, app and CLI.
"""
