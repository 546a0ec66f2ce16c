"""CLI verbs: thin typer adapters over the client and the roles."""
