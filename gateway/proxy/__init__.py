"""The reverse proxy: forwarder, upstream HTTP/1.1 client, header hygiene, credential injectors, token exchange."""
