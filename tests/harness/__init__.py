"""Test harness: throwaway PostgreSQL, RabbitMQ and Redis, and the plugin that picks services."""
