"""Events: encode.py builds the ECS-style dicts (the contract in docs/events.md, schema/), decode.py reads
them back (what `top --events` consumes)."""
