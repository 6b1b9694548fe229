"""API routers, all mounted under /api."""
