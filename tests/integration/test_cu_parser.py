"""The iscsi-test-cu output parser, on an excerpt of a real tgtd run (no tools needed)."""

from __future__ import annotations

from bench.iscsi_test_cu import FAIL, NOTRUN, PASS, SKIP, family_table, parse_verbose

SAMPLE = """\
Found matching LU device identifier for all (2) paths



     CUnit - A unit testing framework for C - Version 2.1-3
     http://cunit.sourceforge.net/


Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
  Test: InvalidDataOutSize ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed with \
ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
Suite: ModeSense6
  Test: Control ...    [WARNING] BUSY_TIMEOUT_PERIOD is undefined.
passed
  Test: Residuals ...passed    [FAILED] PRIN command: failed with sense. SENSE KEY:\
UNIT_ATTENTION(6) ASCQ:MODE PARAMETERS CHANGED(0x2a01)

Suite: Reserve6
  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
    MODE SENSE should fail from the second initiator
    [FAILED] MODESENSE6 successful but should have failed with NO SENSE(0x00)/NO ASCQ(0x0000)
    RELEASE6 from the second initiator
FAILED
    1. test_reserve6_2initiators.c:70  - CU_ASSERT_EQUAL(_r,0)
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. SENSE KEY:\
UNIT_ATTENTION(6) ASCQ:BUS_RESET(0x2900)
    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_RESET(0x2900)

Suite: MultipathIO
  Test: CompareAndWriteAsync ...FAILED
    1. test_multipathio_async_caw.c:45  - CU_ASSERT_EQUAL(atask->sense.key,SCSI_SENSE_MISCOMPARE)
    2. test_multipathio_async_caw.c:45  - CU_ASSERT_EQUAL(atask->sense.key,SCSI_SENSE_MISCOMPARE)

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites     51     51    n/a      0        0
               tests    230    230    221      9        0
             asserts  67327  67327  63316   4011      n/a

Elapsed time =    1.396 seconds
"""

CATALOGUE = {
    "CompareAndWrite": ["Simple", "InvalidDataOutSize"],
    "GetLBAStatus": ["Simple", "BeyondEol"],
    "ModeSense6": ["Control", "Residuals"],
    "Reserve6": ["2Initiators", "LUNReset", "Logout"],
    "MultipathIO": ["CompareAndWriteAsync"],
}


def test_statuses() -> None:
    run = parse_verbose(SAMPLE, CATALOGUE)
    status = {name: r.status for name, r in run.results.items()}
    assert status == {
        "CompareAndWrite.Simple": SKIP,
        "CompareAndWrite.InvalidDataOutSize": SKIP,
        "GetLBAStatus.Simple": PASS,
        "GetLBAStatus.BeyondEol": FAIL,
        "ModeSense6.Control": PASS,  # a [WARNING] is not a skip
        "ModeSense6.Residuals": PASS,  # [FAILED] after the verdict is teardown noise
        "Reserve6.2Initiators": FAIL,
        "Reserve6.LUNReset": PASS,
        "Reserve6.Logout": NOTRUN,  # listed but never reported
        "MultipathIO.CompareAndWriteAsync": FAIL,
    }
    assert run.cunit_summary == {"total": 230, "ran": 230, "passed": 221, "failed": 9,
                                 "inactive": 0}  # fmt: skip


def test_failure_details() -> None:
    run = parse_verbose(SAMPLE, CATALOGUE)
    beyond = run.results["GetLBAStatus.BeyondEol"]
    assert beyond.assertions == ["test_get_lba_status_beyond_eol.c:38 - CU_ASSERT_EQUAL(_r,0)"]
    assert "LBA_OUT_OF_RANGE" in beyond.messages[0]
    reserve = run.results["Reserve6.2Initiators"]
    assert any("MODESENSE6 successful" in m for m in reserve.messages)
    assert "RELEASE6 from the second initiator" in reserve.describe()
    caw = run.results["MultipathIO.CompareAndWriteAsync"]
    assert caw.assertion_count == 2
    assert run.results["ModeSense6.Residuals"].teardown  # kept, but not a failure
    assert run.results["CompareAndWrite.Simple"].skip_reason().startswith("[SKIPPED] COMPARE")


def test_counts_and_table() -> None:
    run = parse_verbose(SAMPLE, CATALOGUE)
    assert run.family_counts("Reserve6") == {FAIL: 1, PASS: 1, NOTRUN: 1}
    assert [r.full_name for r in run.failures()] == [
        "GetLBAStatus.BeyondEol",
        "Reserve6.2Initiators",
        "Reserve6.Logout",
        "MultipathIO.CompareAndWriteAsync",
    ]
    table = family_table({"sample": run}, CATALOGUE)
    assert "| Reserve6 | 3 | 1/2/0 |" in table  # notrun counts as a failure
    assert "| **total** | 10 | **4/4/2** |" in table


def test_truncated_output_names_the_unfinished_test() -> None:
    """A run killed mid-test (crash, hang, timeout): that test and all later ones fail."""
    cut = SAMPLE.index("    MODE SENSE should fail")
    run = parse_verbose(SAMPLE[:cut], CATALOGUE)
    assert run.unfinished == "Reserve6.2Initiators"
    assert run.results["Reserve6.2Initiators"].status == NOTRUN
    assert run.results["MultipathIO.CompareAndWriteAsync"].status == NOTRUN
    assert run.results["GetLBAStatus.BeyondEol"].status == FAIL
    assert not run.cunit_summary
