"""A meshtalk client in Python, from the proto alone.

It registers an account, logs in, joins a room, says something over the
bidirectional SendAndReceiveMessage call, shows and acknowledges what
arrives, and reads the room's history. Generate the modules first (from the
repository's root):

    python -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python -m grpc_tools.protoc -I proto --python_out=gen \\
        --grpc_python_out=gen --pyi_out=gen proto/meshtalk/v1/meshtalk.proto
    .venv/bin/python examples/python/chat.py --gen gen --server 127.0.0.1:50051 NAME PASSWORD

It prints one line per step, as `step: result`.
"""

import argparse
import itertools
import queue
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("password")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--gen", default="gen", help="where protoc wrote the modules")
    parser.add_argument("--room", default="python")
    parser.add_argument(
        "--expect", type=int, default=0, help="messages to wait for, show and ack before speaking"
    )
    args = parser.parse_args()

    sys.path.insert(0, args.gen)
    import grpc
    from meshtalk.v1 import meshtalk_pb2 as pb
    from meshtalk.v1 import meshtalk_pb2_grpc as rpc

    channel = grpc.insecure_channel(args.server)
    accounts = rpc.AccountsStub(channel)
    chat = rpc.ChatStub(channel)

    try:
        accounts.Register(pb.RegisterRequest(name=args.name, password=args.password))
        print(f"register: {args.name}")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        print(f"register: {args.name} exists already")
    login = accounts.Login(pb.LoginRequest(name=args.name, password=args.password))
    auth = [("authorization", f"Bearer {login.token}")]
    print(f"login: {login.name}")

    joined = chat.JoinRoom(pb.JoinRoomRequest(room=args.room), metadata=auth)
    print(f"join: #{joined.room}")

    # The call's requests come from this queue; None ends them.
    outgoing = queue.Queue()
    ids = itertools.count(1)

    def frames():
        while (frame := outgoing.get()) is not None:
            yield frame

    def speak():
        outgoing.put(
            pb.ClientFrame(
                send=pb.OutgoingMessage(
                    request_id=next(ids),
                    message=pb.SendRequest(
                        room=args.room, body="hello from Python", client_msg_id="py-1"
                    ),
                )
            )
        )

    # The stream first replays what waits for this account, oldest first.
    stream = chat.SendAndReceiveMessage(frames(), metadata=auth)
    shown = 0
    if args.expect == 0:
        speak()
    for frame in stream:
        if frame.HasField("send_result"):
            result = frame.send_result
            if result.HasField("error"):
                print(f"send: refused: {pb.ErrorCode.Name(result.error.code)} {result.error.message}")
                return 1
            print(f"send: stored as {result.sent.id} (request {result.request_id})")
            break
        event = frame.event
        if event.HasField("message"):
            m = event.message
            # Shown: acknowledged, so it is not delivered again.
            print(f"message: {m.sender}: {m.body}")
            outgoing.put(pb.ClientFrame(ack=pb.AckRequest(ids=[m.id])))
            shown += 1
            if shown == args.expect:
                speak()
    outgoing.put(None)
    stream.cancel()

    history = chat.GetMessages(
        pb.GetMessagesRequest(room=args.room, limit=10, newest=True), metadata=auth
    )
    for m in history:
        print(f"history: #{args.room} {m.sender}: {m.body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
