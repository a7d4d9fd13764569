"""PostgreSQL adapter: schema, migrations and the queries the services share."""
