"""The customer dashboard: HTML pages served from /dashboard and the few API routes they need."""
