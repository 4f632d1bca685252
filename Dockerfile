FROM python:3.11-slim

# curl for health checks; the service itself needs nothing else from the system.
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/morpheo morpheo \
    && mkdir /data && chown morpheo /data

WORKDIR /src
COPY setup.py README.md ./
COPY morpheo ./morpheo
COPY twisted ./twisted
COPY schema ./schema
RUN pip install --no-cache-dir . \
    # Write Twisted's plugin cache now, while site-packages is writable.
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

USER morpheo
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["twistd", "-n", "--pidfile=", "morpheo-storage", "--data-dir", "/data"]
