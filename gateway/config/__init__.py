"""The gateway's settings: typed, frozen, read from YAML with file:line errors (all at once) and ${VAR} secrets.

settings.py     the names the rest of the code imports (a facade over the modules below)
fields.py       Secret, field types, ${VAR} interpolation, the error validators raise
sections.py     one class per section of config.yaml, and Settings;  auth.py  auth: and tokens:
credentials.py  one class per credential kind;  presets.py  provider presets, expanded into kinds
loader.py       YAML → Settings, every error mapped to file:line:column and the dotted key
schema.py       the JSON Schema, generated from the classes (gateway/config.schema.json)
"""
