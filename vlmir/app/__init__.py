"""The vlmir demo and evaluation space (Gradio): ``create_demo()`` in :mod:`vlmir.app.ui`, its Gradio-free
services in :mod:`vlmir.app.service`. Imported only by ``app.py`` and the tests; ``import vlmir`` never imports it."""
