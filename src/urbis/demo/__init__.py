"""The demo city: its entities, its live updates and its MQTT devices."""
