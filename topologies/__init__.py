"""User topologies: one module a topology; importing a module does no I/O."""
