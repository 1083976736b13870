"""The citizen portal, served at `/`; reads through the public API. Not built yet
(issue 15)."""
