"""Entry point for gunicorn (wsgi:app), Celery (wsgi:celery) and `flask --app wsgi`."""

from massmailer import create_app
from massmailer.heap import freeze_startup_objects
from massmailer.logs import configure_logging

configure_logging()
app = create_app()
celery = app.extensions["celery"]
freeze_startup_objects()
