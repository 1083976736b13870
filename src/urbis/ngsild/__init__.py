"""NGSI-LD features beside the core: subscriptions, registrations and federation, hosted
contexts, discovery."""
