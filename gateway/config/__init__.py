"""The gateway's settings: typed, frozen, read from YAML with file:line errors and ${VAR} secrets."""
