"""thermogate site controller: scan cycle, protection, regulation, historian, CLI."""
