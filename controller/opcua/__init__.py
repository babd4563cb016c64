"""thermogate's OPC UA face: address space, commands, alarms, history and security."""
