"""The contract with the PLC: point map, Modbus codec, transports, PLC-local logic."""
