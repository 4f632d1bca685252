# -*- test-case-name: tests.unit.test_bench -*-
"""
The benchmark of Morpheo Storage, run as C{python -m bench} from the
checkout: the service's figures beside references on the same machine.
"""
