"""The simulated plant: physics, sensors, scenarios, served over real Modbus."""
