"""The Streamlit dashboard of GLM Monitor, shipped as ``monitor.dashboard``.

``app.py`` is the entry script (``glm-monitor dashboard`` runs ``streamlit run`` on it, see
``monitor.dashboard_cmd``); ``views/`` holds one script per page. Every number comes from ``monitor.analytics``
and ``monitor.quota`` through ``data`` (cached for a short time); ``i18n`` holds every label in Japanese and
English and ``format`` renders numbers, money and times for the reader.
"""
