//! Which room each recently committed message went to.
//!
//! A receiver acknowledges by message id. For a direct message the store
//! removes an inbox row; for room speech only the newest id per room matters,
//! as it moves the member's cursor. Finding the room of an id in the store is
//! one look-up per id: 1,024 look-ups for a client that acknowledges 1,024
//! room messages at once, in the store's writes every send waits for.
//! Messages are acknowledged soon after they are committed, so a fixed ring
//! of the latest room messages answers nearly every look-up from memory; an
//! id that has left the ring is looked up in the store as before.

use std::sync::Mutex;

use crate::model::RoomId;

/// Room messages remembered: a few seconds' worth at full speed.
const SLOTS: usize = 1 << 16;

pub struct RecentRooms {
    /// Slot `id % SLOTS` holds `(id, room)` of the latest room message with
    /// that remainder; ids are dense, so the ring holds the newest `SLOTS`.
    slots: Mutex<Box<[(u64, RoomId)]>>,
}

/// An acknowledgement split by what is known of its ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sorted {
    /// The newest acknowledged id of each room.
    pub rooms: Vec<(RoomId, u64)>,
    /// Ids not known to be room speech: direct messages, and old ids.
    pub others: Vec<u64>,
}

impl Default for RecentRooms {
    fn default() -> Self {
        RecentRooms {
            slots: Mutex::new(vec![(0, RoomId(0)); SLOTS].into_boxed_slice()),
        }
    }
}

impl RecentRooms {
    fn slots(&self) -> std::sync::MutexGuard<'_, Box<[(u64, RoomId)]>> {
        // A panic while holding this lock leaves only plain data behind.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that message `id` was said in `room`.
    pub fn record(&self, id: u64, room: RoomId) {
        self.slots()[id as usize % SLOTS] = (id, room);
    }

    /// Splits `ids` into room cursors and the ids the store must look at.
    pub fn sort(&self, ids: &[u64]) -> Sorted {
        let mut sorted = Sorted::default();
        let slots = self.slots();
        for &id in ids {
            match slots[id as usize % SLOTS] {
                (known, room) if known == id && id != 0 => {
                    match sorted.rooms.iter_mut().find(|(r, _)| *r == room) {
                        Some((_, newest)) => *newest = (*newest).max(id),
                        None => sorted.rooms.push((room, id)),
                    }
                }
                _ => sorted.others.push(id),
            }
        }
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_room_ids_fold_to_one_cursor_per_room() {
        let recent = RecentRooms::default();
        recent.record(10, RoomId(1));
        recent.record(11, RoomId(2));
        recent.record(12, RoomId(1));
        let sorted = recent.sort(&[12, 10, 11, 13, 0]);
        assert_eq!(sorted.rooms, vec![(RoomId(1), 12), (RoomId(2), 11)]);
        assert_eq!(sorted.others, vec![13, 0]);
    }

    #[test]
    fn an_id_pushed_out_of_the_ring_goes_to_the_store() {
        let recent = RecentRooms::default();
        recent.record(5, RoomId(1));
        recent.record(5 + SLOTS as u64, RoomId(2));
        let sorted = recent.sort(&[5, 5 + SLOTS as u64]);
        assert_eq!(sorted.rooms, vec![(RoomId(2), 5 + SLOTS as u64)]);
        assert_eq!(sorted.others, vec![5]);
    }
}
