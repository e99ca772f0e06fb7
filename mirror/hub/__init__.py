"""The Hub wire protocol: routes for resolve and api, response headers, error mapping."""
