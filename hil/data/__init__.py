"""Built-in site descriptions and scenario data shipped with thermogate."""
