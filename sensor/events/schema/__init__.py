"""The published event schema (events.schema.json), shipped as package data."""
