"""Usage control (parties, ODRL policies, agreements, audit) and the Dataspace Protocol
connector: implements the twin's access-policy port. Not built yet (issues 10, 11)."""
