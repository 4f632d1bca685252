FROM python:3.11-slim

# The service needs nothing from the system; its health check is Python too.
RUN useradd --system --create-home --home-dir /home/morpheo morpheo \
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
# Asks /health where the service listens: the options of the container's
# command (--port, --host, --cert, --listen), whatever they are.
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "-m", "morpheo.health"]
ENTRYPOINT ["twistd", "-n", "--pidfile=", "morpheo-storage", "--data-dir", "/data"]
