"""Tools for the people who edit the policy: validate, explain, check, test, diff, matrix, schema, and their CLI."""
