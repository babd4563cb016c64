"""The OPC UA face of thermogate: address space, commands, alarms, history and security."""
