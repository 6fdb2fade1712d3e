"""Sigma rules on xfrmwatch events: parsed with pySigma, evaluated live in Python.

:func:`load_rules` reads every ``*.yml``/``*.yaml`` file (directories recursively;
several YAML documents per file allowed), checks each rule against what this package
evaluates, and reports *every* problem as ``path:line: reason`` in one
:class:`~xfrmwatch.errors.RuleError`.  It returns a :class:`RuleSet`: compiled,
immutable, shared by every namespace.  Each namespace feeds its own
:class:`RuleState` (``ruleset.new_state()``) ``(event, now)`` for every event,
``now`` being trio's clock (the only time source: windows and suppression are
testable on a mock clock), and gets the :class:`Hit` s back.

One module per concept, in the way pySigma itself is laid out:

=================  ===============================================================
``fields``         the event schema's field paths; reading them off events
``values``         one rule value (with its modifiers) as a test of field values
``conditions``     detection items, selections and conditions as one matcher
``prefilter``      which event types a detection rule can match
``documents``      rule files as YAML documents that remember their lines
``checks``         xfrmwatch's checks and pySigma's, each problem at its key
``linking``        references between rules, duplicates, cycles
``correlations``   compiled correlations and their windows
``suppression``    the ``xfrmwatch:`` options and the suppression table
``hits``           what a firing reports
``ruleset``        :class:`RuleSet` (compiled, shared) and :class:`RuleState`
``loading``        :func:`load_rules`
=================  ===============================================================

Rule conventions
================

* **logsource**: ``logsource: {product: linux, service: xfrm}`` on every detection
  rule (``definition`` may be added as free text).  Anything else is rejected, including
  ``category``: select event types with the ``type`` field in the detection instead.
* **fields**: the event fields of ``docs/events.md`` as dotted paths (``type``,
  ``sa.spi``, ``sa.auth.name``, ``policy.sel.src``, ``counts.in``...).  A path through
  a list matches when any element does (``policy.tmpl.proto: esp``, ``sa.flags: esn``).
  Unknown fields are rejected (``valid_fields`` widens the set; an entry ``prefix.*``
  accepts every path below ``prefix``).  Events may be msgspec structs or plain dicts.
* **detection**: named selections (a map is AND, a list of maps OR, a list of values
  OR) and ``condition`` with ``and``, ``or``, ``not``, parentheses, ``1 of x*``,
  ``all of x*``, ``1 of them``, ``all of them`` (a list of conditions is OR).  Keyword
  (plain value) detections are rejected.
* **values**: strings match case-insensitively, with Sigma's ``*`` and ``?`` wildcards;
  ``field: null`` matches a missing or null field (or an empty list); numbers also match
  numeric strings (``sa.spi: 0xc0de`` matches ``"0x0000c0de"``).
* **modifiers**: ``contains``, ``startswith``, ``endswith``, ``all``, ``cased``,
  ``re`` (Sigma/RE2 syntax, unanchored, case-sensitive) with its flags ``i``, ``m``,
  ``s``, ``cidr`` (an address, or a network that is a subnet of the rule's CIDR),
  ``gt``, ``gte``, ``lt``, ``lte``, ``exists``.  Every other modifier is rejected.
* **level**: Sigma's ``informational``, ``low``, ``medium``, ``high``, ``critical``;
  ``medium`` when the rule has none.  The hit's id is the rule's ``id``, else its
  ``name``, else ``path:line``.
* **correlations** (Sigma correlation rules): ``event_count``, ``value_count``
  (``condition.field``), ``temporal``, ``temporal_ordered``, with ``rules`` (by ``name``
  or ``id``; correlations may reference correlations), ``group-by``, ``aliases``,
  ``timespan`` (``30s``, ``5m``, ``1h``, ``1d``...) and ``condition`` (one of ``gt``,
  ``gte``, ``lt``, ``lte``, ``eq``, ``neq``).  ``temporal`` counts the distinct rules
  seen in the window (default: all of them); ``temporal_ordered`` takes no condition:
  every rule, in the given order, by distinct events.  Conditions are evaluated when a
  referenced rule matches, over the window that ends then; a group whose correlation
  fired starts afresh.  Events lacking a ``group-by`` field are not counted.  Rules
  referenced by a correlation produce no hits of their own unless the correlation says
  ``generate: true``.  Not supported: ``value_sum``/``value_avg``/``value_percentile``/
  ``value_median``, extended (string) conditions, ranges (two operators: chain two
  correlations instead), Sigma filters and collection actions (``action: global``...).
* **suppression**: an optional ``xfrmwatch`` key per rule::

      xfrmwatch:
        suppress: 5m            # period (30s, 5m, 1h, 1d or seconds); 0 turns it off
        suppress_by: [sa.spi]   # detection rules only: what makes two hits "the same"

  A repeated hit of the same rule for the same group within the period is held back
  and counted; the next hit after the period carries ``suppressed: N``.  A correlation
  groups by its ``group-by`` values and is suppressed for ``suppress`` or else the
  RuleSet's ``default_suppress``; a detection rule is suppressed only when it says
  ``suppress`` or ``suppress_by`` (``default_suppress`` being the period when it gives
  only ``suppress_by``; ``suppress`` alone groups the whole rule).
"""

from __future__ import annotations

from ...errors import RuleError as RuleError
from .checks import SUPPORTED_CORRELATIONS as SUPPORTED_CORRELATIONS
from .checks import SUPPORTED_MODIFIERS as SUPPORTED_MODIFIERS
from .correlations import Limits as Limits
from .fields import SCHEMA_FIELDS as SCHEMA_FIELDS
from .fields import schema_fields as schema_fields
from .hits import Hit as Hit
from .hits import RuleInfo as RuleInfo
from .loading import load_rules as load_rules
from .ruleset import RuleSet as RuleSet
from .ruleset import RuleState as RuleState
from .ruleset import RuleStateStatistics as RuleStateStatistics
