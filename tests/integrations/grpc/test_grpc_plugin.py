"""``pytest --nativeguard`` fails a test that leaks a gRPC channel, naming the holder.

The inner session runs in a subprocess (grpc and the registry are
process-wide) with a session-scoped server started before the first
baseline, so only what each test leaves counts.
"""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("grpc")

CONFTEST = textwrap.dedent(
    """
    from concurrent import futures

    import grpc
    import pytest

    from nativeguard.integrations.grpc import managed_channel


    def echo(request, context):
        return request


    @pytest.fixture(scope="session", autouse=True)
    def server():
        pool = futures.ThreadPoolExecutor(max_workers=2)
        server = grpc.server(pool)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "t.S", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        target = f"127.0.0.1:{port}"
        with managed_channel(target) as channel:  # grpc's process-wide threads: no test's
            channel.unary_unary("/t.S/Echo")(b"warm", timeout=10)
        yield target
        server.stop(None).wait(10)
        pool.shutdown(wait=True)
    """
)

TESTS = textwrap.dedent(
    """
    import grpc

    import nativeguard
    from nativeguard.integrations.grpc import managed_channel

    CHANNELS = {}


    def test_channel_kept_in_a_global(server):
        channel = CHANNELS.setdefault("speech", grpc.insecure_channel(server))
        assert channel.unary_unary("/t.S/Echo")(b"x", timeout=10) == b"x"


    def test_managed_channel(server):
        with managed_channel(server) as channel:
            assert channel.unary_unary("/t.S/Echo")(b"x", timeout=10) == b"x"


    def test_guarded_channel(server):
        @nativeguard.guarded
        def call():
            channel = grpc.insecure_channel(server)
            return channel.unary_unary("/t.S/Echo")(b"x", timeout=10)

        assert call() == b"x"


    def test_closed_by_hand(server):
        channel = grpc.insecure_channel(server)
        try:
            assert channel.unary_unary("/t.S/Echo")(b"x", timeout=10) == b"x"
        finally:
            channel.close()
    """
)


def test_plugin_fails_the_test_that_keeps_a_channel_and_names_the_holder(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_grpc_leaks=TESTS)
    result = pytester.runpytest_subprocess("--nativeguard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert len(failed) == 1
    assert "test_channel_kept_in_a_global" in failed[0]
    text = result.stdout.str()
    assert "held by: Channel <- dict <- global CHANNELS in module test_grpc_leaks" in text
    assert "live instances: Channel +1" in text
    assert "grpc.channels +1" in text
    assert "grpc.sockets +2" in text  # its connection, and the server's end of it
    assert "4 test(s) checked, 1 leaked" in text
