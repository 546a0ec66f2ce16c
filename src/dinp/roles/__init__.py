"""The long-running roles: server, agent, router, and all of them in one process (`up`)."""
