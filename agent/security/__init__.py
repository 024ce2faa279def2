"""Who is who: key files and roles, CURVE for clients and peers, the authority table."""
